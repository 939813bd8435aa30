import django.db.models.deletion
from django.db import migrations, models

# The single-column indexes Django made for these foreign keys; an index made for another query begins with
# each column already (run: (tenant, created_at) and (session, status, created_at); session: the unique
# (tenant, key); message: the unique (session, seq)), and every one of them was written again at each status
# change of a run.
REDUNDANT_INDEXES = [
    ("agent_sessions_run_tenant_id_6363e59d", "agent_sessions_run", "tenant_id"),
    ("agent_sessions_run_session_id_f397ef8b", "agent_sessions_run", "session_id"),
    ("agent_sessions_agentsession_tenant_id_fd659c6e", "agent_sessions_agentsession", "tenant_id"),
    ("agent_sessions_message_session_id_702865c4", "agent_sessions_message", "session_id"),
]

UNFINISHED = """CREATE INDEX CONCURRENTLY IF NOT EXISTS "run_unfinished_by_tenant" ON "agent_sessions_run" ("tenant_id", "status")
WHERE "status" IN ('queued', 'running', 'awaiting_approval')"""


class Migration(migrations.Migration):
    # Concurrently, outside a transaction: these tables stay readable and writable while the migration runs, as
    # a rolling deploy needs (docs/operations.md). Django's own AlterField(db_index=False) would also drop and
    # re-add each foreign key, checking every row under an exclusive lock.
    atomic = False

    dependencies = [
        ('agent_sessions', '0005_toolcall_awaiting_client'),
        ('tenants', '0005_agent_providers_skills_compaction'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(UNFINISHED, 'DROP INDEX CONCURRENTLY IF EXISTS "run_unfinished_by_tenant"'),
                *(
                    migrations.RunSQL(
                        f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"',
                        f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" ("{column}")',
                    )
                    for name, table, column in REDUNDANT_INDEXES
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='agentsession',
                    name='tenant',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='sessions', to='tenants.tenant'),
                ),
                migrations.AlterField(
                    model_name='message',
                    name='session',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='messages', to='agent_sessions.agentsession'),
                ),
                migrations.AlterField(
                    model_name='run',
                    name='session',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='runs', to='agent_sessions.agentsession'),
                ),
                migrations.AlterField(
                    model_name='run',
                    name='tenant',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='runs', to='tenants.tenant'),
                ),
                migrations.AddIndex(
                    model_name='run',
                    index=models.Index(condition=models.Q(('status__in', ['queued', 'running', 'awaiting_approval'])), fields=['tenant', 'status'], name='run_unfinished_by_tenant'),
                ),
            ],
        ),
    ]
