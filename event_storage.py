"""Event-history service entry point: `uvicorn event_storage:app --port 8020`."""

from musicrec.service_events import create_app

app = create_app()
