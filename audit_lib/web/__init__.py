"""The DPO web application: register data subjects, read their findings, erase them.

FastAPI with server-rendered Jinja2 pages (templates in ``templates/web/``), one router per
resource in ``routers/``. It has its own sign-in (users and roles in the evidence store)
because Airflow's login does not cover plugin endpoints. Heavy libraries are never
imported here; ``create_app`` lives in :mod:`audit_lib.web.app`.
"""
