"""Adapters from each CLIP library to :class:`clip_service.models.clip.ClipModel`."""
