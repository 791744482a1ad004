"""MGNet Explorer, the Streamlit app: `streamlit run app/main.py`. The app only wires widgets to `mgnet`."""
