"""Perception: frames in, items out (sources, vision, tracking, preprocess).

Pure array code apart from the frame sources, which own the camera or the video file.
"""
