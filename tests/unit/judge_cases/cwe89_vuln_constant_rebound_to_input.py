from flask import Flask, request

app = Flask(__name__)


@app.route("/report")
def report():
    db = app.config["DB"]
    table = "orders"
    if request.args.get("archive"):
        table = request.args["archive"]
    return {"rows": db.execute("SELECT COUNT(*) FROM " + table + " WHERE paid = 1").fetchone()}
