// Progressive enhancement only: every page works without this script.
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-upload]")) {
    form.addEventListener("submit", (event) => {
      const progress = form.querySelector("progress");
      const error = form.querySelector(".upload-error");
      const max = Number(form.dataset.maxBytes || 0);
      const show = (text) => {
        if (!error) return;
        error.textContent = text;
        error.hidden = false;
        error.focus();
      };
      if (error) error.hidden = true;
      const tooBig = [...form.querySelectorAll("input[type=file]")].some(
        (field) => field.files.length && max && field.files[0].size > max,
      );
      if (tooBig) {
        event.preventDefault();
        show(document.documentElement.lang === "en"
          ? `The file is too large (${Math.round(max / 1048576)} MB at most).`
          : `Le fichier est trop volumineux (${Math.round(max / 1048576)} Mo au maximum).`);
        return;
      }
      if (!progress || !window.XMLHttpRequest) return;
      event.preventDefault();
      const request = new XMLHttpRequest();
      request.open("POST", form.action);
      request.setRequestHeader("Accept", "application/json");
      progress.hidden = false;
      progress.value = 0;
      request.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
      });
      request.addEventListener("load", () => {
        if (request.status < 400) {
          progress.value = 100;
          window.location.href = request.responseURL || window.location.href;
          return;
        }
        progress.hidden = true;
        let text = "";
        try { text = JSON.parse(request.responseText).error; } catch (_) { text = ""; }
        show(text || (document.documentElement.lang === "en" ? "The upload failed." : "L'envoi a échoué."));
      });
      request.addEventListener("error", () => {
        progress.hidden = true;
        show(document.documentElement.lang === "en" ? "The upload failed: check your connection." : "L'envoi a échoué : vérifiez votre connexion.");
      });
      request.send(new FormData(form));
    });
  }
});
