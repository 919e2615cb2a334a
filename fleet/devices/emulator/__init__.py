"""An emulated Android device for tests and rehearsals without phones (see ``device``)."""
