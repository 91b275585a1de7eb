"""Training side of produce-sorter (TensorFlow/Keras): data, model, fit, reports, export."""
