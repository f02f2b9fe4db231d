"""The omni-demo app: page, sessions, capture and playback around the model in `model/`."""
