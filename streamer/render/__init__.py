"""Drawing for people: the label panel, track boxes and words every viewer (overlay, web, clips) shows."""
