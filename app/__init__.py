"""The review web app: server-rendered pages over tasks.review (no prefect, no CDN; assets ship here)."""
