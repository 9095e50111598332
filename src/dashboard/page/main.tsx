import "uplot/dist/uPlot.min.css";
import "./style.css";
import { render } from "preact";
import { App } from "./app.tsx";

const root = document.getElementById("app")!;
// The server-rendered "Loading…" line is not Preact's to reconcile; it would stay next to the app.
root.replaceChildren();
render(<App />, root);
