"""Data: the generated concept world, the Broden probe format, and ImageFolder classification splits.

``kdlib.data`` depends only on ``kdlib.params``.
"""
