"""Event-history service entry point: `uvicorn event_storage:app --port 8020`."""

from musicrec.service_common import app_or_exit
from musicrec.service_events import create_app

app = app_or_exit(create_app)
