"""Recommendation service entry point: `uvicorn api_main:app --port 8000`."""

from musicrec.service_recommendations import create_app

app = create_app()
