"""Operations on the farm: diagnostics (`sorter doctor`), gate calibration (`sorter calibrate`)."""
