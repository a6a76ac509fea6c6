"""The stores behind one interface (:mod:`kannuki.backends.base`, generated from ``base_async``).

Each store is one async source module (``X_async.py``) and its generated sync
twin (``X.py``); :mod:`kannuki.backends.registry` maps URL schemes and user
connection objects to them. This package module imports nothing, so importing
one backend never imports the others.
"""
