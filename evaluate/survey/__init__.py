"""The clinicians' spot-the-fake survey: build pairs, store answers, score them, the Streamlit app."""
