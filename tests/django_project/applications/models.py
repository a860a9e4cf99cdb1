from django.db import models


class JobApplication(models.Model):
    profile_id = models.UUIDField(db_index=True)
    position = models.CharField(max_length=200)
    status = models.CharField(max_length=20, default="submitted")
