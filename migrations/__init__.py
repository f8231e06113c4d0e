"""voxgate's SQL migrations, shipped in the wheel as package data.

The ``NNNN_name.sql`` files beside this module are what ``voxgate migrate`` applies
(gateway/storage/migrations.py reads them with importlib.resources). This module holds no
code: it exists so an installed voxgate carries its schema.
"""
