"""Similar-tracks service entry point: `uvicorn similarity_store:app --port 8010`."""

from musicrec.service_similar import create_app

app = create_app()
