"""Run by Django's test runner (EdulinkTestRunner) in tests/test_django.py."""

import uuid

from django.db import connection
from django.test import TestCase

from microservices.shared.database.django_rls import rls_user
from profiles.models import Profile


class ProfileTests(TestCase):
    def test_create_and_read_as_the_service_role(self) -> None:
        user_id = uuid.uuid4()
        with rls_user(user_id):  # FORCE RLS: only the request user's row
            Profile.objects.create(user_id=user_id, display_name="Ada")
            self.assertEqual(Profile.objects.count(), 1)
        self.assertEqual(Profile.objects.count(), 0)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_schema()")
            self.assertEqual(cursor.fetchone(), ("user_service_role", "user_schema"))
