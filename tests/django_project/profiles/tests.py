"""Run by Django's test runner (EdulinkTestRunner) in tests/test_django.py."""

import uuid

from django.db import connection
from django.test import TestCase

from profiles.models import Profile


class ProfileTests(TestCase):
    def test_create_and_read_as_the_service_role(self) -> None:
        Profile.objects.create(user_id=uuid.uuid4(), display_name="Ada")
        self.assertEqual(Profile.objects.count(), 1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_schema()")
            self.assertEqual(cursor.fetchone(), ("user_service_role", "user_schema"))
