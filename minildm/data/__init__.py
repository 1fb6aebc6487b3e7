"""Data the course renders itself: captioned Shapes images and 2-D point clouds."""
