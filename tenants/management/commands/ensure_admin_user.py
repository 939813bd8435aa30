import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a superuser for the Django admin if missing; print its password (kept in --password-file)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", required=True)

    def handle(self, *args, username, password_file, **options):
        path = Path(password_file)
        User = get_user_model()
        password = path.read_text().strip() if path.exists() else ""
        user = User.objects.filter(username=username).first()
        if user is None or not password or not user.check_password(password):
            password = secrets.token_urlsafe(12)
            path.write_text(password)
            path.chmod(0o600)
            if user is None:
                User.objects.create_superuser(username=username, email="", password=password)
            else:
                user.set_password(password)
                user.save(update_fields=["password"])
        self.stdout.write(password)
