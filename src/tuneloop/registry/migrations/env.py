"""Alembic environment: runs on the connection tuneloop hands over (no alembic.ini needed)."""

from alembic import context

from tuneloop.registry.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite can only ALTER tables through batch mode
)
with context.begin_transaction():
    context.run_migrations()
