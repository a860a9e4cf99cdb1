from django.db import models


class Profile(models.Model):
    user_id = models.UUIDField(unique=True)
    display_name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)
