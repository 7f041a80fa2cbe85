"""The review page: a person answers True/False on the suggested ROIs of a round, in a browser.

``connectile review RUN`` serves the page on 127.0.0.1 behind a random access token; answers go
through :class:`engine.active.answers.AnswerStore` and are what the next round reads.
"""

from engine.review.rounds import ReviewError, ReviewRound, RoiStore, load_round
from engine.review.server import ReviewServer, serve_review
from engine.review.tiles import render_tile

__all__ = ["ReviewError", "ReviewRound", "ReviewServer", "RoiStore", "load_round", "render_tile", "serve_review"]
