"""The user service's profiles table, as another service sees it (read-only)."""

from django.db import models

from microservices.shared.database.django_settings import service_table


class ProfileMirror(models.Model):
    user_id = models.UUIDField(unique=True)
    display_name = models.CharField(max_length=100)

    class Meta:
        managed = False
        db_table = service_table("user", "profiles_profile")
