"""Android phones over adb (coordinator side): one device provider per lab host (discovery,
hot-plug, forwards, telemetry read over adb), the launcher that installs and starts the agent on
a phone, and an emulated device that speaks the adb protocol for tests and rehearsals."""
