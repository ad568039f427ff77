// The entry point: one protocol client, one UI, and a resumed session if the browser has one.
// No framework and no build step: these files are what the browser runs.

import { Lanes } from "./lanes.js";
import { Ui } from "./ui.js";

const lanes = new Lanes();
const ui = new Ui(lanes);
ui.start();
if (lanes.session) {
  lanes.start().then(() => ui.route()).catch((error) => {
    // The server may be down at load time; the session stays and the page can be reloaded.
    ui.announce(`Could not reach the server: ${error.message}`, true);
    setTimeout(() => location.reload(), 5000);
  });
}
// For the browser tests and for curious users in the console.
window.lanes = lanes;
