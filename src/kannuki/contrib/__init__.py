"""Optional bridges to other libraries; each needs its own extra (e.g. ``kannuki[prometheus]``)."""
