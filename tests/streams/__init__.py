"""Stream slots of a converted model (run_slots, reset(slots=...), the READY gate) and the
StreamPool that maps stream ids to slots: a slot's outputs never depend on its
neighbours."""
