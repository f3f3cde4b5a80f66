"""Recommendation service entry point: `uvicorn api_main:app --port 8000`."""

from musicrec.service_common import app_or_exit
from musicrec.service_recommendations import create_app

app = app_or_exit(create_app)
