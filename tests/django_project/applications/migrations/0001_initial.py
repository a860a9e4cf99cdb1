from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.CreateModel(
            name="JobApplication",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                           serialize=False, verbose_name="ID")),
                ("profile_id", models.UUIDField(db_index=True)),
                ("position", models.CharField(max_length=200)),
                ("status", models.CharField(default="submitted", max_length=20)),
            ],
        ),
    ]
