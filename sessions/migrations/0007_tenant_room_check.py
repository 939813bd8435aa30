from django.db import migrations


# What a new session's run start sends with its COMMIT (sessions/runs/lifecycle.py, tenant_room_check_at_commit):
# the tenant's row is locked and its running runs counted only then, inside Postgres, so no Python stands
# between taking that lock and releasing it. Each statement of a volatile function takes its own snapshot:
# the count, read after the lock, sees the runs of whoever held it before.
TENANT_ROOM_CHECK = """
CREATE OR REPLACE FUNCTION beamclaw_tenant_room_check(tenant bigint) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    room_limit integer;
    active bigint;
BEGIN
    SELECT max_concurrent_runs INTO room_limit FROM tenants_tenant WHERE id = tenant FOR NO KEY UPDATE;
    SELECT count(*) INTO active FROM agent_sessions_run
        WHERE tenant_id = tenant AND status IN ('running', 'awaiting_approval');
    IF active > room_limit THEN
        RAISE EXCEPTION 'tenant % is at its max_concurrent_runs (%)', tenant, room_limit USING ERRCODE = 'BC429';
    END IF;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("agent_sessions", "0006_run_indexes_of_what_runs_now"), ("tenants", "0005_agent_providers_skills_compaction")]

    operations = [
        migrations.RunSQL(TENANT_ROOM_CHECK, "DROP FUNCTION IF EXISTS beamclaw_tenant_room_check(bigint);"),
    ]
