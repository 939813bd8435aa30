"""The Django admin shows uploaded skills (files included) and can remove them."""

from django.urls import reverse

from tests.skills.conftest import skill_md, zip_of
from tools.models import Skill
from tools.skills import skill_upload


def test_the_admin_shows_and_deletes_uploaded_skills(admin_client, tenant):
    skill, _ = skill_upload(tenant=tenant.tenant, data=zip_of({"SKILL.md": skill_md("audit", "Audits."), "check.sh": "echo ok"}))
    changelist = reverse("admin:tools_skill_changelist")
    assert "audit" in admin_client.get(changelist, {"q": tenant.tenant.slug}).content.decode()
    page = admin_client.get(reverse("admin:tools_skill_change", args=[skill.pk])).content.decode()
    assert "check.sh (7 bytes)" in page and "Audits." in page
    response = admin_client.post(reverse("admin:tools_skill_delete", args=[skill.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Skill.objects.filter(pk=skill.pk).exists()
