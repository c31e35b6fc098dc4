"""Run folders: the study driver, manifests (and later the papermill runner). The only part of kdlib that
knows about ``outputs/<run-id>/``; nothing else in kdlib imports it."""
