"""Data layer: readers, LAM-H5 store, neighbour lists, graphs, statistics. Imports neither Lightning nor Hydra."""
