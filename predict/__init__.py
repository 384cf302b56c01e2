"""`stadapter-predict`: label folders and lists of videos, timelines of long videos and live streams."""
