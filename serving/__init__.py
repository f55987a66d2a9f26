"""The wtag scoring server: ``serving.app.create_app`` builds the app for one ONNX model, ``serving.app.run``
serves it, ``serving.cli`` is the ``serve`` command. Importing the package itself loads nothing, so the
``wtag`` command can discover ``serving.cli`` without starting the web stack."""
