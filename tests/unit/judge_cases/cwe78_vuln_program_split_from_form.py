import subprocess

from flask import Flask, request

app = Flask(__name__)


@app.route("/tools/run", methods=["POST"])
def run_tool():
    parts = request.form["command"].split()
    out = subprocess.check_output([parts[0], *parts[1:]], text=True)
    return {"output": out}
