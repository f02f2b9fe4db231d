"""The user's inputs, before any model sees them: media files decoded and checked against the limits, video
frames made ready for the vision encoder, messages and typed text made into conversation parts."""
