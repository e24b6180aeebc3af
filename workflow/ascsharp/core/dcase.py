"""The DCASE2020 Task 1A vocabulary: scenes, cities and devices, and which devices are seen in
training. Every stage takes its labels from here (through ascsharp.data.meta), so a label can
never be spelt two ways."""

from __future__ import annotations

# Sorted once, used everywhere: the model's output index i means SCENES[i].
SCENES: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
CITIES: tuple[str, ...] = (
    "barcelona",
    "helsinki",
    "lisbon",
    "london",
    "lyon",
    "milan",
    "paris",
    "prague",
    "stockholm",
    "vienna",
)
# Devices as they appear in file names; A, B, C are real devices, S1-S6 simulated ones.
DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
SEEN_DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3")
UNSEEN_DEVICES: tuple[str, ...] = ("s4", "s5", "s6")  # only in the evaluate fold: the OOD devices
