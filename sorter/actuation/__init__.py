"""Actuation: a decided item in, a gate command out (decider, scheduling, link_events, link).

Talks to the controller only through the typed `link.ControllerLinkLike` interface.
"""
