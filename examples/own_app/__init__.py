"""A team's own RAG app, evaluated by ragloop as an eval target."""
