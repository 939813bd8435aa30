"""The accounts service on its own: pairing codes over time (no bot needed)."""

from datetime import timedelta

import pytest

from channels_app import accounts
from channels_app.models import Pairing


@pytest.fixture
def account(tenant):
    return accounts.channel_account_create(tenant=tenant.tenant, kind="discord", name="bot", agent=tenant.agent,
                                           secret="token-for-tests", enabled=False)


def test_a_sender_gets_one_code_an_hour_and_a_new_one_after_it_expired(account, tenant):
    first = accounts.pairing_request(account=account, sender_id="555", sender_name="eve")
    assert first is not None and len(first.code) == 8 and first.code.isalnum() and first.code.upper() == first.code
    assert accounts.pairing_request(account=account, sender_id="555") is None, "no second code within the hour"
    Pairing.objects.filter(pk=first.pk).update(expires_at=first.expires_at - timedelta(hours=2))
    with pytest.raises(accounts.PairingNotFound):
        accounts.pairing_approve(code=first.code, tenant=tenant.tenant)
    second = accounts.pairing_request(account=account, sender_id="555")
    assert second.pk == first.pk and second.code != first.code
    assert not accounts.dm_allowed(account=account, sender_id="555")
    accounts.pairing_approve(code=second.code.lower(), tenant=tenant.tenant)
    assert accounts.dm_allowed(account=account, sender_id="555")
    assert accounts.pairing_request(account=account, sender_id="555") is None, "an approved sender needs no code"


def test_another_tenants_code_is_not_found(account, make_tenant):
    pairing = accounts.pairing_request(account=account, sender_id="556")
    with pytest.raises(accounts.PairingNotFound):
        accounts.pairing_approve(code=pairing.code, tenant=make_tenant().tenant)
    assert Pairing.objects.get(pk=pairing.pk).status == "pending"
