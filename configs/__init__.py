"""Experiment configs: one Python file per experiment, each exposing `get_config(arg)`."""
