"""WSGI entry point: `flask --app app …`, `gunicorn 'app:app'`, `waitress-serve app:app`."""

from provider import create_app

app = create_app()
