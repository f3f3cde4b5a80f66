"""Similar-tracks service entry point: `uvicorn similarity_store:app --port 8010`."""

from musicrec.service_common import app_or_exit
from musicrec.service_similar import create_app

app = app_or_exit(create_app)
