"""Abuse suite: what a hostile tenant tries, one module per attack surface.

Each test states the attack in its name and asserts what the attacker sees (a clear 4xx, a refusal, a
cap) and that the server keeps answering afterwards. Add a test here for every attack found.
"""
