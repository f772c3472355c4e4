"""The API's routes, one module per resource; :data:`api_router` includes them all."""

from __future__ import annotations

from fastapi import APIRouter

from app.routes import datasets, health, jobs, recommendations, ui

__all__ = ["api_router"]

api_router = APIRouter()
api_router.include_router(datasets.router)
api_router.include_router(jobs.router)
api_router.include_router(recommendations.router)
api_router.include_router(health.router)
api_router.include_router(ui.router)
