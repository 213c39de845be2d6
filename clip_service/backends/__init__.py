"""Adapters from each CLIP library to :class:`clip_service.clip_model.ClipModel`."""
