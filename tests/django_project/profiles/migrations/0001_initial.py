from django.db import migrations, models

# The seed's security model on this table: FORCE RLS on shared_schema.current_user_id().
# FORCE makes the policy bind the table's owner too; without a request user,
# current_user_id() is NULL and the policy matches nothing.  (In the initial
# migration, so that tests may add a 0002 of their own.)
ROW_LEVEL_SECURITY = [
    "ALTER TABLE profiles_profile ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE profiles_profile FORCE ROW LEVEL SECURITY",
    "CREATE POLICY profile_owner ON profiles_profile FOR ALL"
    " USING (user_id::text = shared_schema.current_user_id())"
    " WITH CHECK (user_id::text = shared_schema.current_user_id())",
]
NO_ROW_LEVEL_SECURITY = [
    "DROP POLICY profile_owner ON profiles_profile",
    "ALTER TABLE profiles_profile NO FORCE ROW LEVEL SECURITY",
    "ALTER TABLE profiles_profile DISABLE ROW LEVEL SECURITY",
]


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.CreateModel(
            name="Profile",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("user_id", models.UUIDField(unique=True)),
                ("display_name", models.CharField(max_length=100)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.RunSQL(ROW_LEVEL_SECURITY, NO_ROW_LEVEL_SECURITY),
    ]
